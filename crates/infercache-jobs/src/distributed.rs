//! Distributed jobs (feature `distributed`): several processes, on as many machines, share
//! one job through the Redis the cache already uses, with no scheduler of their own.
//!
//! ```text
//!  every worker: Plan (same input ⇒ same job id) ─► RedisQueue on {prefix}job:{id}:batches
//!     └► the first one enqueues the job's windows (one script: SET NX marker,
//!        XGROUP CREATE … MKSTREAM, one XADD per window; a second worker enqueues nothing)
//!     └► loop: XREADGROUP a new window, or XAUTOCLAIM one pending past --claim-timeout
//!          └► JobModel::rows on the per-row path (the rows land in the shared Redis tier)
//!          └► the inputs that failed into the hash {prefix}job:{id}:failures, and
//!             XACK, in one transaction, once the rows are stored
//!     └► when nothing is new and nothing is pending: the job is drained
//!  then (each worker, or a `--collect` run that takes no windows):
//!     └► runner::run over the whole file: every row is a hit, or a failure a worker
//!        recorded (reported with its reason, not computed again); output in input order
//! ```
//!
//! A window is the range of records `start-end` of the producer's plan: every worker
//! parses the same input, so a range names the same inputs everywhere. A worker that
//! dies leaves its windows pending; another takes them over once they have been idle for
//! the claim timeout. A live worker keeps its windows' idle time short (an `XCLAIM` to
//! itself every third of the timeout), so a slow window is not taken over while its
//! worker lives. The distributed single flight of the Redis tier (leases) keeps a repeat
//! in another window from being computed twice while its first occurrence is computing.
//!
//! The stream and the marker expire with the cache's entries (the Redis tier's TTL), so
//! a re-run of a finished job finds it drained and goes straight to writing its output.
//! An input that fails is not cached: the worker that tried it records it, with its
//! reason, in the job's failures hash (keyed by the BLAKE3 of its canonical form), and
//! every writing pass reports it from there in its errors file rather than calling the
//! model again (`Recorded`). The hash expires with the stream; `--restart` drops the
//! job's keys, so its failed inputs are tried again.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::try_join_all;
use infercache_redis::RedisConfig;
use infercache_redis::redis::{self, aio::MultiplexedConnection};

use crate::JobError;
use crate::format::InputKind;
use crate::input::Input;
use crate::model::{Identity, JobModel, Output, RowResult, Served};
use crate::runner::{self, JobOptions, Plan, Progress, Summary, WorkerCounts};
use crate::spec::JobId;

/// The consumer group of a job's stream.
const GROUP: &str = "workers";

/// Connect and command timeout of the queue's connection (its commands are few and small;
/// this is not the cache tier's tight timeout).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Windows one worker holds at once: while one is computed, the next is looked up. The
/// model calls in flight stay within `--concurrency`.
const WINDOWS_IN_FLIGHT: usize = 2;

/// How long a worker waits before asking again while other workers hold the last windows.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Enqueues the job's windows unless it has been enqueued already: `KEYS[1]` the stream,
/// `KEYS[2]` the marker, `KEYS[3]` the failures hash, `ARGV[1]` the number of windows,
/// `ARGV[2]` the keys' TTL in seconds, then one `start-end` per window. Returns 1 when
/// this call enqueued. One script, so a second worker sees either no job or the whole of
/// it, and never the failures of an earlier one.
const ENQUEUE: &str = r"
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM')
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'r', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// How a distributed job runs.
#[derive(Debug, Clone)]
pub struct Distributed {
    /// The Redis holding the job's stream: a single server (its URL, prefix and TLS
    /// settings; the cache's Redis tier, or another).
    pub redis: RedisConfig,
    /// How long a window may stay pending before another worker takes it over.
    pub claim_timeout: Duration,
    /// Only write the output: wait until the job is drained, take no windows.
    pub collect: bool,
}

/// A stream entry as Redis sends it (RESP2): its id and its fields and values, flat.
type Entry = (String, Vec<String>);

/// A window of the job, as the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// The stream entry's id.
    id: String,
    /// Its records.
    records: std::ops::Range<usize>,
    /// Taken over from another worker.
    claimed: bool,
}

/// What the stream says next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A window to compute.
    Window(Window),
    /// Nothing new, but windows are pending at other workers.
    Wait,
    /// Every window is done.
    Drained,
}

/// A job's stream and consumer group on Redis, as one worker sees it.
#[derive(Clone)]
struct RedisQueue {
    conn: MultiplexedConnection,
    stream: String,
    marker: String,
    /// The hash of the inputs that failed: field [`failure_field`], value the reason.
    failures: String,
    consumer: String,
    claim_timeout: Duration,
    ttl: Duration,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

fn queue_error(what: &str, e: &redis::RedisError) -> JobError {
    JobError::Distributed(format!("{what}: {e}"))
}

impl RedisQueue {
    /// Connects to the job `id`'s stream on `config`'s Redis.
    async fn connect(
        config: &RedisConfig,
        id: &JobId,
        claim_timeout: Duration,
    ) -> Result<Self, JobError> {
        let url = match &config.target {
            infercache_redis::Target::Single(url) => url,
            infercache_redis::Target::Cluster(_) => {
                return Err(JobError::Distributed(
                    "distributed jobs need a single Redis server, not a cluster".into(),
                ));
            }
        };
        let shown = infercache_core::redact_url(url);
        let client = config
            .client(url)
            .map_err(|e| JobError::Distributed(e.to_string()))?;
        let settings = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(QUEUE_TIMEOUT))
            .set_response_timeout(Some(QUEUE_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await
            .map_err(|e| queue_error(&format!("cannot reach Redis at {shown}"), &e))?;
        let base = format!("{}job:{id}", config.prefix);
        Ok(Self {
            conn,
            stream: format!("{base}:batches"),
            marker: format!("{base}:enqueued"),
            failures: format!("{base}:failures"),
            consumer: consumer_name(),
            claim_timeout,
            ttl: config.ttl,
        })
    }

    /// Enqueues `windows` unless the job was enqueued already; true when this call did.
    async fn enqueue_once(&self, windows: &[std::ops::Range<usize>]) -> Result<bool, JobError> {
        let script = redis::Script::new(ENQUEUE);
        let mut call = script.key(&self.stream);
        call.key(&self.marker)
            .key(&self.failures)
            .arg(windows.len())
            .arg(self.ttl.as_secs().max(1));
        for w in windows {
            call.arg(format!("{}-{}", w.start, w.end));
        }
        let done: i64 = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| queue_error("enqueueing the job's windows", &e))?;
        Ok(done == 1)
    }

    /// Whether the job was ever enqueued (its marker exists).
    async fn enqueued(&self) -> Result<bool, JobError> {
        redis::cmd("EXISTS")
            .arg(&self.marker)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| queue_error("looking up the job", &e))
    }

    /// The next window for this worker: a new one, or one pending past the claim
    /// timeout at another; else whether others still hold windows.
    async fn next(&self, take: bool) -> Result<Next, JobError> {
        let mut conn = self.conn.clone();
        if take {
            let read: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut conn)
                .await
                .map_err(|e| queue_error("reading the job's stream", &e))?;
            if let Some((id, fields)) = read.into_iter().flatten().flat_map(|(_, e)| e).next() {
                return Ok(Next::Window(window(id, &fields, false)?));
            }
            let (_, claimed, _): (String, Vec<Entry>, redis::Value) = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(millis(self.claim_timeout))
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(|e| queue_error("claiming a stale window", &e))?;
            if let Some((id, fields)) = claimed.into_iter().next() {
                return Ok(Next::Window(window(id, &fields, true)?));
            }
        }
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .map_err(|e| queue_error("reading the job's pending windows", &e))?;
        let pending = match pending {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        if pending > 0 {
            return Ok(Next::Wait);
        }
        if !take {
            // A collecting run takes nothing: only a stream whose every entry was read
            // and acknowledged is drained.
            let lag: Option<i64> = group_lag(&mut conn, &self.stream).await?;
            if lag != Some(0) {
                return Ok(Next::Wait);
            }
        }
        Ok(Next::Drained)
    }

    /// Acknowledges a window, its rows stored, recording the inputs of it that failed
    /// (`(field, reason)`) in the same transaction: a window is done together with its
    /// failures, or not at all.
    async fn ack(&self, id: &str, failed: &[(String, String)]) -> Result<(), JobError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !failed.is_empty() {
            pipe.hset_multiple(&self.failures, failed)
                .ignore()
                .expire(
                    &self.failures,
                    i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX),
                )
                .ignore();
        }
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(id)
            .ignore();
        let () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| queue_error("acknowledging a window", &e))?;
        Ok(())
    }

    /// Every failure the job's workers recorded, by [`failure_field`].
    async fn failures(&self) -> Result<HashMap<String, String>, JobError> {
        redis::cmd("HGETALL")
            .arg(&self.failures)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| queue_error("reading the job's failures", &e))
    }

    /// Drops the job's keys (stream, marker, failures): the next worker enqueues it anew.
    async fn forget(&self) -> Result<(), JobError> {
        let _: i64 = redis::cmd("DEL")
            .arg(&self.stream)
            .arg(&self.marker)
            .arg(&self.failures)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| queue_error("dropping the job's keys", &e))?;
        Ok(())
    }

    /// Resets a window's idle time while this worker computes it.
    async fn touch(&self, id: &str) -> Result<(), JobError> {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| queue_error("renewing a window", &e))?;
        Ok(())
    }
}

/// The group's `lag` (entries not yet delivered), from `XINFO GROUPS`; `None` when Redis
/// does not report it.
async fn group_lag(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> Result<Option<i64>, JobError> {
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| queue_error("reading the job's stream", &e))?;
    for group in groups {
        let fields: Vec<(&redis::Value, &redis::Value)> = match &group {
            redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            redis::Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((k, v)),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| redis::from_redis_value_ref::<String>(k).is_ok_and(|k| k == name))
                .map(|(_, v)| *v)
        };
        let ours = field("name")
            .is_some_and(|v| redis::from_redis_value_ref::<String>(v).is_ok_and(|n| n == GROUP));
        if ours {
            return Ok(field("lag").and_then(|v| match v {
                redis::Value::Int(n) => Some(*n),
                _ => None,
            }));
        }
    }
    Ok(None)
}

/// An input's field in the failures hash: the BLAKE3 of its kind and canonical form, in
/// hex (the same on every worker, which all read the same file).
fn failure_field(input: &Input) -> String {
    let canonical = input.canonical();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[canonical.kind() as u8]);
    hasher.update(canonical.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// A job's model with the inputs known to fail: one of them fails with its recorded
/// reason, without a model call; every other input goes to the model. The writing pass
/// knows what every worker recorded; a worker, the failures of its own windows (a
/// failure is not cached, so a repeat in a later window would otherwise be tried again).
#[derive(Debug)]
struct Recorded<'a> {
    model: &'a dyn JobModel,
    /// By [`failure_field`]: the reason.
    failures: Mutex<HashMap<String, String>>,
}

impl<'a> Recorded<'a> {
    fn new(model: &'a dyn JobModel, failures: HashMap<String, String>) -> Self {
        Self {
            model,
            failures: Mutex::new(failures),
        }
    }

    fn failure(&self, input: &Input) -> Option<String> {
        let failures = self
            .failures
            .lock()
            .expect("the failures lock is never poisoned");
        if failures.is_empty() {
            return None;
        }
        failures.get(&failure_field(input)).cloned()
    }

    /// Adds `failed` (field, reason) to the known failures.
    fn record(&self, failed: &[(String, String)]) {
        if failed.is_empty() {
            return;
        }
        let mut failures = self
            .failures
            .lock()
            .expect("the failures lock is never poisoned");
        failures.extend(failed.iter().cloned());
    }
}

impl JobModel for Recorded<'_> {
    fn identity(&self) -> Identity {
        self.model.identity()
    }

    fn input_kind(&self) -> InputKind {
        self.model.input_kind()
    }

    fn rows<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> infercache_backend::BoxFuture<'a, Result<Vec<RowResult>, String>> {
        Box::pin(async move {
            let known: Vec<Option<String>> = inputs.iter().map(|i| self.failure(i)).collect();
            if known.iter().all(Option::is_none) {
                return self.model.rows(inputs).await;
            }
            let rest: Vec<Input> = inputs
                .iter()
                .zip(&known)
                .filter(|(_, k)| k.is_none())
                .map(|(i, _)| i.clone())
                .collect();
            let mut computed = if rest.is_empty() {
                Vec::new()
            } else {
                self.model.rows(&rest).await?
            }
            .into_iter();
            Ok(known
                .into_iter()
                .map(|k| match k {
                    Some(reason) => Err(reason),
                    None => computed
                        .next()
                        .unwrap_or_else(|| Err("the model answered too few rows".to_owned())),
                })
                .collect())
        })
    }

    fn lookup<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> infercache_backend::BoxFuture<'a, Vec<Option<Output>>> {
        self.model.lookup(inputs)
    }

    fn model_calls(&self) -> u64 {
        self.model.model_calls()
    }

    fn rows_in_flight(&self, concurrency: usize) -> usize {
        self.model.rows_in_flight(concurrency)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A window from its stream entry (`r` = `start-end`).
fn window(id: String, fields: &[String], claimed: bool) -> Result<Window, JobError> {
    let range = fields
        .chunks(2)
        .find(|kv| kv[0] == "r")
        .and_then(|kv| kv.get(1))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some(a.parse().ok()?..b.parse().ok()?))
        .ok_or_else(|| {
            JobError::Distributed(format!(
                "the job's stream holds an entry that is not a window ({id})"
            ))
        })?;
    Ok(Window {
        id,
        records: range,
        claimed,
    })
}

/// This worker's name in the group: the host, the process and the time it started, so a
/// restarted worker is a new consumer and its predecessor's windows are claimed, not
/// mistaken for its own.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{}-{nanos:x}", std::process::id())
}

/// What the worker loops count, shared between them.
#[derive(Debug, Default)]
struct Tally {
    windows: AtomicU64,
    claimed: AtomicU64,
    rows: AtomicU64,
    computed: AtomicU64,
    errors: AtomicU64,
}

/// Runs a distributed job: takes windows from the job's stream until it is drained
/// (unless [`Distributed::collect`]), then writes the output ([`runner::run`]: every row
/// a hit). Redis is reached before anything is written.
///
/// # Errors
/// [`JobError::Distributed`] when Redis cannot be reached or its stream is not a job's;
/// under `collect`, when no worker has started the job. Else as [`runner::run`].
pub async fn run(
    model: &dyn JobModel,
    options: &JobOptions,
    distributed: &Distributed,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary, JobError> {
    let plan = Plan::read(model, options).await?;
    let id = plan.spec.id();
    let queue = RedisQueue::connect(&distributed.redis, &id, distributed.claim_timeout).await?;
    if options.mode == runner::Mode::Restart && !distributed.collect {
        // The job starts over on every worker: its failed inputs are tried again.
        queue.forget().await?;
    }
    let tally = Tally::default();
    let calls_at_start = model.model_calls();
    let mut enqueued = false;
    if distributed.collect {
        if !queue.enqueued().await? {
            return Err(JobError::Distributed(format!(
                "no worker has started job {id} on this Redis: run `bulk --workers` first"
            )));
        }
        wait_drained(&queue, stop).await?;
    } else {
        let batch = options.batch_size.max(1);
        let concurrency = options.concurrency.max(1);
        // A window is one round of calls: small windows spread the job over the workers.
        let windows = runner::windows(
            &plan.firsts,
            0,
            batch.saturating_mul(concurrency),
            runner::LOOKUP_WINDOW.max(batch),
        );
        enqueued = queue.enqueue_once(&windows).await?;
        if enqueued {
            tracing::info!(job = %id, windows = windows.len(), "enqueued the job's windows");
        }
        let calls = runner::Calls::new(model.rows_in_flight(concurrency));
        let known = Recorded::new(model, HashMap::new());
        let loops = (0..WINDOWS_IN_FLIGHT)
            .map(|_| work(&known, &plan, batch, &calls, &queue, &tally, stop));
        try_join_all(loops).await?;
    }
    let counts = WorkerCounts {
        enqueued,
        windows: tally.windows.load(Ordering::Relaxed),
        claimed: tally.claimed.load(Ordering::Relaxed),
        rows: tally.rows.load(Ordering::Relaxed),
        computed: tally.computed.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        model_calls: model.model_calls() - calls_at_start,
    };
    if stop.load(Ordering::SeqCst) {
        return Ok(Summary::stopped(&id, counts));
    }
    let writer = Recorded::new(model, queue.failures().await?);
    let mut summary = runner::run(&writer, options, stop, progress).await?;
    summary.worker = Some(counts);
    Ok(summary)
}

/// Waits until every window is done, taking none.
async fn wait_drained(queue: &RedisQueue, stop: &AtomicBool) -> Result<(), JobError> {
    while !stop.load(Ordering::SeqCst) {
        if queue.next(false).await? == Next::Drained {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// One worker loop: takes windows and computes them until the job is drained or `stop`.
/// The inputs that fail join `model`'s known failures.
async fn work(
    model: &Recorded<'_>,
    plan: &Plan,
    batch: usize,
    calls: &runner::Calls,
    queue: &RedisQueue,
    tally: &Tally,
    stop: &AtomicBool,
) -> Result<(), JobError> {
    while !stop.load(Ordering::SeqCst) {
        let window = match queue.next(true).await? {
            Next::Drained => return Ok(()),
            Next::Wait => {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            Next::Window(window) => window,
        };
        if window.records.start > window.records.end || window.records.end > plan.records.len() {
            return Err(JobError::Distributed(format!(
                "window {} ({:?}) is past the end of the input (a bug or a foreign stream)",
                window.id, window.records
            )));
        }
        if window.claimed {
            tracing::info!(window = %window.id, "taking over a window another worker left");
        }
        let inputs = runner::inputs_in(&plan.records, window.records.clone());
        let firsts: Vec<bool> = plan.firsts[window.records.clone()]
            .iter()
            .flatten()
            .copied()
            .collect();
        let rows = runner::window_rows(model, &inputs, &firsts, batch, calls, async {});
        let results = renewing(queue, &window.id, rows).await;
        let mut failed = Vec::new();
        for ((first, result), input) in firsts.iter().zip(&results).zip(&inputs) {
            match result {
                Ok((_, Served::Computed)) if *first => {
                    tally.computed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(reason) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    failed.push((failure_field(input), reason.clone()));
                }
            }
        }
        // The rows are stored (the model call returns after the cache write): the window
        // is done for every worker, and so are its failures.
        queue.ack(&window.id, &failed).await?;
        model.record(&failed);
        tally.windows.fetch_add(1, Ordering::Relaxed);
        tally
            .claimed
            .fetch_add(u64::from(window.claimed), Ordering::Relaxed);
        tally
            .rows
            .fetch_add(results.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Runs `work`, renewing window `id` every third of the claim timeout until it is done.
async fn renewing<T>(queue: &RedisQueue, id: &str, work: impl Future<Output = T>) -> T {
    let mut work = pin!(work);
    let mut tick = tokio::time::interval((queue.claim_timeout / 3).max(Duration::from_millis(10)));
    tick.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                if let Err(e) = queue.touch(id).await {
                    tracing::warn!(window = %id, error = %e, "could not renew a window: another worker may take it over");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reads_back_from_its_entry_and_a_foreign_entry_is_an_error() {
        let w = window("1-0".into(), &["r".into(), "32-64".into()], true).unwrap();
        assert_eq!(w.records, 32..64);
        assert!(w.claimed);
        assert!(window("1-1".into(), &["x".into(), "1".into()], false).is_err());
        assert!(window("1-2".into(), &["r".into(), "a-b".into()], false).is_err());
    }
}
