//! The dashboard's metrics: what a request became (every row route), the rows in flight,
//! upstream errors by status, the batches sent to models, invalidations, and readable
//! latency buckets. Handles are resolved once per model in `Traffic::new`; only upstream
//! errors, off the hot path, are found by their status when they happen.

use super::*;

/// Upper bounds, in seconds, of the request-latency buckets: 0.1 ms doubling up to 13 s.
/// Shared by `infercache_request_duration_seconds` and the dashboard's quantiles.
pub const LATENCY_BOUNDS: [f64; 18] = {
    let mut b = [0.000_1; 18];
    let mut i = 1;
    while i < b.len() {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

/// Buckets of [`LATENCY_BOUNDS`] and one past the last bound.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// Latency counts by bucket that can be read back: prometheus-client's histogram keeps
/// its buckets to itself, and the dashboard's p50/p99 over each sample interval need them.
#[derive(Debug, Default)]
pub(super) struct Buckets([AtomicU64; LATENCY_BUCKETS]);

impl Buckets {
    pub(super) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The `q` quantile (0 to 1), in milliseconds, of the observations counted in `counts`
/// (by bucket of [`LATENCY_BOUNDS`]): interpolated within its bucket; the last, unbounded
/// bucket reads as its lower bound. `None` without observations.
pub fn quantile_ms(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "a quantile for display")]
    let rank = (q * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        #[expect(clippy::cast_precision_loss, reason = "a quantile for display")]
        let (before, here) = (seen as f64, n as f64);
        seen += n;
        #[expect(clippy::cast_precision_loss, reason = "a quantile for display")]
        if seen as f64 >= rank {
            let low = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            let Some(&high) = LATENCY_BOUNDS.get(i) else {
                return Some(low * 1000.0);
            };
            let within = ((rank - before) / here).clamp(0.0, 1.0);
            return Some((low + (high - low) * within) * 1000.0);
        }
    }
    Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1] * 1000.0)
}

/// What became of a request on a row route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Every row from the cache.
    Hit,
    /// Some rows from the cache, some computed.
    Partial,
    /// Every row computed.
    Miss,
    /// Some row served stale (the model failed).
    Stale,
    /// The request failed after its model was resolved.
    Error,
}

impl RequestOutcome {
    /// Every outcome, in the order of their labels.
    pub const ALL: [RequestOutcome; 5] = [
        Self::Hit,
        Self::Partial,
        Self::Miss,
        Self::Stale,
        Self::Error,
    ];

    /// `hit`, `partial`, `miss`, `stale` or `error`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Partial => "partial",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Error => "error",
        }
    }

    /// A served request's outcome.
    pub fn of(rows: &infercache_infer::Rows) -> Self {
        if rows.stale() > 0 {
            return Self::Stale;
        }
        match rows.outcome() {
            Outcome::Hit => Self::Hit,
            Outcome::Miss => Self::Miss,
            Outcome::Partial => Self::Partial,
        }
    }
}

/// The label of an upstream failure: its HTTP status, else what went wrong.
fn upstream_label(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Status { status, .. } => status.to_string(),
        UpstreamError::Timeout { .. } => "timeout".to_owned(),
        UpstreamError::Unreachable { .. } => "unreachable".to_owned(),
        UpstreamError::Broken { .. } => "broken".to_owned(),
        UpstreamError::Tls { .. } => "tls".to_owned(),
        UpstreamError::BadResponse { .. } => "bad_response".to_owned(),
    }
}

/// The scopes of an invalidation, as `infercache_invalidations_total{scope}` labels them.
pub const INVALIDATION_SCOPES: [&str; 4] = ["all", "namespace", "model", "version"];

/// Per model: requests by outcome, rows in flight, batch sizes; upstream errors by status;
/// invalidations by scope.
pub struct Traffic {
    /// Per model (by [`Model::index`]), per [`RequestOutcome`].
    requests: Vec<[Counter; 5]>,
    /// Per model: rows of requests waiting for the cache or the model.
    in_flight: Vec<Gauge>,
    /// Per model: rows per backend call.
    batches: Vec<Histogram>,
    /// Per model name and failure label, found when an upstream fails.
    upstream_errors: Family<Labels, Counter>,
    /// The same series, readable by model and label.
    upstream_seen: Mutex<BTreeMap<(String, String), Counter>>,
    invalidations: [Counter; 4],
}

impl fmt::Debug for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traffic").finish_non_exhaustive()
    }
}

impl Traffic {
    pub(super) fn new(registry: &mut Registry, models: &Models) -> Self {
        let model_label = |m: &Model| ("model", m.name().to_owned());
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests on the row routes by model and outcome (hit, partial, miss, stale, error)",
            requests.clone(),
        );
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "rows_in_flight",
            "Rows of requests waiting for the cache or the model",
            in_flight.clone(),
        );
        let batches = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 12))
        });
        registry.register(
            "batch_rows",
            "Rows per model call made for requests' cache misses",
            batches.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests whose model's upstream failed, by its HTTP status or the failure",
            upstream_errors.clone(),
        );
        let invalidations = Family::<Labels, Counter>::default();
        registry.register(
            "invalidations",
            "Invalidations by scope",
            invalidations.clone(),
        );
        Self {
            requests: models
                .iter()
                .map(|m| {
                    RequestOutcome::ALL.map(|o| {
                        requests
                            .get_or_create(&vec![model_label(m), ("outcome", o.label().to_owned())])
                            .clone()
                    })
                })
                .collect(),
            in_flight: models
                .iter()
                .map(|m| in_flight.get_or_create(&vec![model_label(m)]).clone())
                .collect(),
            batches: models
                .iter()
                .map(|m| batches.get_or_create(&vec![model_label(m)]).clone())
                .collect(),
            upstream_errors,
            upstream_seen: Mutex::default(),
            invalidations: INVALIDATION_SCOPES.map(|s| {
                invalidations
                    .get_or_create(&vec![("scope", s.to_owned())])
                    .clone()
            }),
        }
    }

    /// Counts a request for `model` that ended as `outcome`.
    pub fn request(&self, model: &Model, outcome: RequestOutcome) {
        if let Some(c) = self.requests.get(model.index()) {
            c[outcome as usize].inc();
        }
    }

    /// Counts a failed request, and its upstream's failure if that is why.
    pub fn failed(&self, model: &Model, error: &InferError) {
        self.request(model, RequestOutcome::Error);
        if let InferError::Backend(BackendError::Upstream(e)) = error {
            let key = (model.name().to_owned(), upstream_label(e));
            let mut seen = self
                .upstream_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.entry(key)
                .or_insert_with_key(|(model, status)| {
                    self.upstream_errors
                        .get_or_create(&vec![("model", model.clone()), ("status", status.clone())])
                        .clone()
                })
                .inc();
        }
    }

    /// `model`'s requests so far, by [`RequestOutcome::ALL`].
    pub fn requests(&self, model: &Model) -> [u64; 5] {
        self.requests
            .get(model.index())
            .map_or([0; 5], |c| c.each_ref().map(Counter::get))
    }

    /// Marks `rows` of `model` in flight until the guard drops.
    pub fn in_flight(&self, model: &Model, rows: usize) -> InFlight {
        let gauge = self.in_flight.get(model.index()).cloned();
        let rows = i64::try_from(rows).unwrap_or(i64::MAX);
        if let Some(g) = &gauge {
            g.inc_by(rows);
        }
        InFlight { gauge, rows }
    }

    /// Rows of `model`'s requests in flight now.
    pub fn rows_in_flight(&self, model: &Model) -> u64 {
        self.in_flight
            .get(model.index())
            .map_or(0, |g| u64::try_from(g.get()).unwrap_or(0))
    }

    pub(super) fn batch(&self, model: &Model, rows: usize) {
        if let Some(h) = self.batches.get(model.index()) {
            #[expect(clippy::cast_precision_loss, reason = "a row count, far below 2^52")]
            h.observe(rows as f64);
        }
    }

    /// Upstream failures so far: model name, label (status or failure), count.
    pub fn upstream_errors(&self) -> Vec<(String, String, u64)> {
        self.upstream_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((m, s), c)| (m.clone(), s.clone(), c.get()))
            .collect()
    }

    /// Counts an invalidation of `scope` (one of [`INVALIDATION_SCOPES`]).
    pub fn invalidated(&self, scope: &str) {
        if let Some(i) = INVALIDATION_SCOPES.iter().position(|s| *s == scope) {
            self.invalidations[i].inc();
        }
    }
}

/// Rows in flight, counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    gauge: Option<Gauge>,
    rows: i64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec_by(self.rows);
        }
    }
}

/// `open_metrics` (this server's OpenMetrics text) in the classic Prometheus text format
/// (0.0.4), for scrapers and tools that read only that one (`promtool check metrics`
/// among them). The two differ, for what this server writes, in three places only: a
/// counter's `HELP` and `TYPE` lines name its `_total` series, there is no `# UNIT`, and
/// no `# EOF`. prometheus-client writes OpenMetrics alone, hence this small rewrite.
pub fn classic_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 32 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod dashboard_tests {
    #[test]
    fn the_classic_text_names_counters_by_their_total_series() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                    a_requests_total{x=\"1\"} 3\n# HELP a_bytes Bytes.\n# TYPE a_bytes gauge\n\
                    # UNIT a_bytes bytes\na_bytes 7\n# EOF\n";
        assert_eq!(
            super::classic_text(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{x=\"1\"} 3\n# HELP a_bytes Bytes.\n# TYPE a_bytes gauge\na_bytes 7\n"
        );
    }

    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_holding_the_rank() {
        let mut counts = [0u64; LATENCY_BUCKETS];
        assert_eq!(quantile_ms(&counts, 0.5), None);
        // 99 observations at or under 0.1 ms, one in (0.4 ms, 0.8 ms].
        counts[0] = 99;
        counts[3] = 1;
        let p50 = quantile_ms(&counts, 0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.1, "{p50}");
        let p99 = quantile_ms(&counts, 0.99).unwrap();
        assert!(p99 <= 0.1, "{p99}");
        let max = quantile_ms(&counts, 1.0).unwrap();
        assert!(max > 0.4 && max <= 0.8, "{max}");
        // Past the last bound: its lower bound.
        let mut slow = [0u64; LATENCY_BUCKETS];
        slow[LATENCY_BUCKETS - 1] = 3;
        assert!((quantile_ms(&slow, 0.5).unwrap() - LATENCY_BOUNDS[17] * 1000.0).abs() < 1e-9);
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_bounds_it() {
        let b = Buckets::default();
        b.observe(Duration::from_micros(50));
        b.observe(Duration::from_micros(150));
        b.observe(Duration::from_secs(60));
        let s = b.snapshot();
        assert_eq!((s[0], s[1], s[LATENCY_BUCKETS - 1]), (1, 1, 1));
        assert_eq!(s.iter().sum::<u64>(), 3);
    }
}
