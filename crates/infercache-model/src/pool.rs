//! Dedicated inference threads behind a bounded queue, with dynamic batching.
//!
//! ```text
//!  async callers ──try_send──▶ [ bounded queue ] ──▶ worker thread(s) ──▶ Embedder::embed
//!        ▲                      full ⇒ Overloaded        gather ≤ max_batch texts
//!        └──────────── oneshot reply per request ◀──────  or until max_wait
//! ```
//!
//! Callers never block: a request is queued with a non-blocking `try_send` (a full queue is
//! [`ModelError::Overloaded`] at once) and awaited on a `tokio::sync::oneshot`. Inference
//! runs only on the pool's own OS threads, never on an async worker. The workers share one
//! receiver behind a mutex: one worker at a time gathers a batch (waiting for its first
//! request, then at most `max_wait` for more, up to `max_batch` texts), releases the lock and
//! runs the forward pass while the next worker gathers. A std mutex is right here: it is
//! only ever taken on the pool's threads, never across an `.await`.
//!
//! A panic in a forward pass fails only the batch in flight: its callers get
//! [`ModelError::Panicked`], the worker thread ends and a fresh one takes its place (the
//! queue's receiver is the pool's, not the thread's, so queued requests wait for it). Should
//! no thread run (a replacement could not be spawned), [`InferencePool::is_ready`] is false
//! and requests fail at once with [`ModelError::NoWorkers`] until a spawn succeeds again;
//! both retry the spawn.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{Embedder, ModelError};

type Reply = Result<Vec<Vec<f32>>, ModelError>;

/// The longest `max_wait` accepted: waiting longer to fill a batch is never useful.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// How an [`InferencePool`] runs. Build with [`PoolConfig::default`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    threads: usize,
    max_batch: usize,
    max_wait: Duration,
    queue_capacity: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            queue_capacity: 256,
        }
    }
}

impl PoolConfig {
    /// Inference threads, each running one forward pass at a time. Default 1: the
    /// embedder already spreads one forward pass over the cores (its `Threads`).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Most texts a worker gathers from the queue into one batch. Default 32. A single
    /// request larger than this is still served, in several forward passes.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Longest a worker waits, after the first request of a batch, for more requests.
    /// Default 2 ms: the latency paid for batching when the pool is nearly idle.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Jobs that may wait in the queue (a request is one job per `max_batch` texts); a
    /// request that does not fit is [`ModelError::Overloaded`]. Default 256.
    pub fn queue_capacity(mut self, queue_capacity: usize) -> Self {
        self.queue_capacity = queue_capacity;
        self
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.threads == 0 {
            return Err(ModelError::InvalidConfig("threads must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(ModelError::InvalidConfig("max_batch must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(ModelError::InvalidConfig(
                "queue_capacity must be at least 1",
            ));
        }
        if self.max_wait > MAX_WAIT {
            return Err(ModelError::InvalidConfig("max_wait must be at most 10 s"));
        }
        Ok(())
    }
}

/// A snapshot of an [`InferencePool`]'s counters, all since the pool started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Requests accepted into the queue.
    pub requests: u64,
    /// Requests refused because the queue was full.
    pub overloaded: u64,
    /// Model invocations: forward passes run, successful or not.
    pub invocations: u64,
    /// Forward passes that failed (their callers got the error).
    pub failed_invocations: u64,
    /// Texts embedded successfully.
    pub texts: u64,
    /// Forward passes that panicked (each failed its batch and replaced its thread).
    pub panics: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    overloaded: AtomicU64,
    invocations: AtomicU64,
    failed_invocations: AtomicU64,
    texts: AtomicU64,
    panics: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PoolStats {
        PoolStats {
            requests: self.requests.load(Ordering::Relaxed),
            overloaded: self.overloaded.load(Ordering::Relaxed),
            invocations: self.invocations.load(Ordering::Relaxed),
            failed_invocations: self.failed_invocations.load(Ordering::Relaxed),
            texts: self.texts.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
        }
    }
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Reply>,
}

/// Runs an [`Embedder`] on dedicated threads for async callers, batching concurrent
/// requests into shared forward passes; see the [threading model](crate#threading-model).
///
/// Texts of at most this many bytes in all are counted on the caller's thread
/// ([`InferencePool::count_tokens_many`]).
pub const INLINE_COUNT_BYTES: usize = 16 * 1024;

/// Dropping the pool closes the queue: the workers finish what is queued and exit on
/// their own. [`shutdown`](Self::shutdown) does the same and waits for them.
#[derive(Debug)]
pub struct InferencePool {
    queue: SyncSender<Job>,
    crew: Arc<Crew>,
    config: PoolConfig,
}

/// What the worker threads share, and what replaces one that panicked.
#[derive(Debug)]
struct Crew {
    receiver: Arc<Mutex<Receiver<Job>>>,
    embedder: Arc<Embedder>,
    counters: Arc<Counters>,
    max_batch: usize,
    max_wait: Duration,
    /// Threads wanted: `config.threads`.
    wanted: usize,
    /// Threads started and not yet ended.
    live: AtomicUsize,
    /// Every thread ever spawned; [`InferencePool::shutdown`] joins them.
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Numbers the threads' names.
    spawned: AtomicUsize,
    #[cfg(feature = "test-support")]
    faults: Faults,
}

/// Faults a test injects (feature `test-support`).
#[cfg(feature = "test-support")]
#[derive(Debug, Default)]
struct Faults {
    /// Forward passes still to panic.
    panics: AtomicUsize,
    /// Whether spawning a thread fails, as when the process is out of threads.
    refuse_spawns: std::sync::atomic::AtomicBool,
}

impl Crew {
    /// Spawns threads until `wanted` run; how many run afterwards.
    fn fill(self: &Arc<Self>) -> usize {
        // One spawner at a time, so two callers do not both fill the same gap.
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        while self.live.load(Ordering::SeqCst) < self.wanted {
            match self.spawn() {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    tracing::error!(%error, "could not start an inference thread");
                    break;
                }
            }
        }
        self.live.load(Ordering::SeqCst)
    }

    fn spawn(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        #[cfg(feature = "test-support")]
        if self.faults.refuse_spawns.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("spawns refused by the test"));
        }
        let i = self.spawned.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::SeqCst);
        let crew = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("infercache-model-{i}"))
            .spawn(move || {
                Worker {
                    crew,
                    retired: std::cell::Cell::new(false),
                }
                .run();
            })
            .inspect_err(|_| {
                self.live.fetch_sub(1, Ordering::SeqCst);
            })
    }

    /// Runs one forward pass, turning a panic into [`ModelError::Panicked`].
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Fault> {
        let pass = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "test-support")]
            if self
                .faults
                .panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                panic!("a forward pass panicked, as the test asked");
            }
            self.embedder.embed(texts)
        }));
        match pass {
            Ok(Ok(vectors)) => Ok(vectors),
            Ok(Err(error)) => Err(Fault::Error(error)),
            Err(payload) => Err(Fault::Panic(panic_message(payload.as_ref()))),
        }
    }
}

/// Why a forward pass gave no vectors.
enum Fault {
    Error(ModelError),
    Panic(String),
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl InferencePool {
    /// Starts `config.threads` worker threads sharing `embedder`.
    pub fn new(embedder: Embedder, config: PoolConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let (queue, receiver) = mpsc::sync_channel(config.queue_capacity);
        let crew = Arc::new(Crew {
            receiver: Arc::new(Mutex::new(receiver)),
            embedder: Arc::new(embedder),
            counters: Arc::new(Counters::default()),
            max_batch: config.max_batch,
            max_wait: config.max_wait,
            wanted: config.threads,
            live: AtomicUsize::new(0),
            handles: Mutex::new(Vec::with_capacity(config.threads)),
            spawned: AtomicUsize::new(0),
            #[cfg(feature = "test-support")]
            faults: Faults::default(),
        });
        {
            let mut handles = crew.handles.lock().unwrap_or_else(PoisonError::into_inner);
            for _ in 0..config.threads {
                handles.push(crew.spawn().map_err(|e| ModelError::io("<thread>", e))?);
            }
        }
        Ok(Self {
            queue,
            crew,
            config,
        })
    }

    /// Whether the pool can serve: at least one inference thread runs. Starts threads
    /// missing since a panic first.
    pub fn is_ready(&self) -> bool {
        self.crew.live.load(Ordering::SeqCst) >= self.crew.wanted || self.crew.fill() > 0
    }

    /// Makes the next `n` forward passes panic (feature `test-support`).
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn inject_panics(&self, n: usize) {
        self.crew.faults.panics.store(n, Ordering::SeqCst);
    }

    /// Makes spawning an inference thread fail while `refuse` holds (feature
    /// `test-support`).
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn refuse_spawns(&self, refuse: bool) {
        self.crew
            .faults
            .refuse_spawns
            .store(refuse, Ordering::SeqCst);
    }

    /// Tokens in `text` with `[CLS]` and `[SEP]`, before truncation (see
    /// [`Embedder::count_tokens`]); runs on the caller's thread, no model call.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails on `text`.
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        self.crew.embedder.count_tokens(text)
    }

    /// [`count_tokens`](Self::count_tokens) of each text (0 for one the tokenizer
    /// refuses), on the blocking pool when the texts are long enough to stall an async
    /// worker (more than [`INLINE_COUNT_BYTES`] in all).
    pub async fn count_tokens_many(&self, texts: &[String]) -> Vec<usize> {
        if texts.iter().map(String::len).sum::<usize>() <= INLINE_COUNT_BYTES {
            return texts
                .iter()
                .map(|t| self.count_tokens(t).unwrap_or(0))
                .collect();
        }
        let (crew, texts) = (Arc::clone(&self.crew), texts.to_vec());
        tokio::task::spawn_blocking(move || {
            texts
                .iter()
                .map(|t| crew.embedder.count_tokens(t).unwrap_or(0))
                .collect()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Embeds `texts` (unit vectors of [`DIMS`](crate::DIMS) floats, in order), batched
    /// with whatever other callers have queued. Fails at once with
    /// [`ModelError::Overloaded`] when the queue is full.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        self.submit(texts)?.await
    }

    /// Queues `texts` without waiting; the returned future resolves to the embeddings.
    /// The queueing decision (accepted, or [`ModelError::Overloaded`]) is made here,
    /// synchronously. Dropping the future abandons the request; a worker skips it if it
    /// has not started on it yet.
    pub fn submit(&self, texts: Vec<String>) -> Result<PendingEmbeddings, ModelError> {
        if !self.is_ready() {
            return Err(ModelError::NoWorkers);
        }
        // A request larger than a batch is queued as several jobs of at most `max_batch`
        // texts, so other requests' jobs interleave with its passes instead of waiting for
        // all of them, and a caller that gives up stops costing passes at the next chunk.
        let mut receivers = Vec::with_capacity(texts.len().div_ceil(self.config.max_batch));
        let mut texts = texts.into_iter().peekable();
        while texts.peek().is_some() {
            let chunk: Vec<String> = texts.by_ref().take(self.config.max_batch).collect();
            let (reply, receiver) = oneshot::channel();
            match self.queue.try_send(Job {
                texts: chunk,
                reply,
            }) {
                Ok(()) => receivers.push(receiver),
                // Chunks already queued are skipped by the workers once `receivers` drops.
                Err(TrySendError::Full(_)) => {
                    Counters::add(&self.crew.counters.overloaded, 1);
                    return Err(ModelError::Overloaded);
                }
                Err(TrySendError::Disconnected(_)) => return Err(ModelError::Shutdown),
            }
        }
        if !receivers.is_empty() {
            Counters::add(&self.crew.counters.requests, 1);
        }
        Ok(PendingEmbeddings {
            receivers,
            done: Vec::new(),
        })
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        self.crew.counters.snapshot()
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Closes the queue and waits until the workers have answered every queued request and
    /// exited. Blocks: from async code, call it inside `spawn_blocking`.
    pub fn shutdown(self) {
        let Self { queue, crew, .. } = self;
        drop(queue);
        // A thread that panicked pushes its replacement's handle before it ends, so once
        // the list is empty after a join, no thread is left.
        loop {
            let next = crew
                .handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(worker) = next else { break };
            if worker.join().is_err() {
                tracing::error!("an inference thread panicked outside a forward pass");
            }
        }
    }
}

/// The answer to a [`InferencePool::submit`]: resolves to the embeddings, or to
/// [`ModelError::Shutdown`] if the pool went away without answering.
#[derive(Debug)]
#[must_use = "the embeddings arrive only when this is awaited"]
pub struct PendingEmbeddings {
    /// One per queued chunk, in order; answered ones are drained from the front.
    receivers: Vec<oneshot::Receiver<Reply>>,
    done: Vec<Vec<f32>>,
}

impl Future for PendingEmbeddings {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = &mut *self;
        while let Some(first) = this.receivers.first_mut() {
            match Pin::new(first).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(vectors))) => {
                    this.done.extend(vectors);
                    this.receivers.remove(0);
                }
                Poll::Ready(Ok(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => return Poll::Ready(Err(ModelError::Shutdown)),
            }
        }
        Poll::Ready(Ok(std::mem::take(&mut this.done)))
    }
}

struct Worker {
    crew: Arc<Crew>,
    /// Set once this thread no longer counts as running (a forward pass panicked).
    retired: std::cell::Cell<bool>,
}

impl Drop for Worker {
    /// The thread ends (the queue closed): it no longer runs.
    fn drop(&mut self) {
        if !self.retired.get() {
            self.crew.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Worker {
    fn run(self) {
        while let Some(jobs) = self.gather() {
            if self.serve(jobs).is_err() {
                // Whatever state the panic left on this thread goes with it; its
                // replacement was started before the callers were answered.
                return;
            }
        }
    }

    /// This thread stops counting as running and a replacement is started, before the
    /// callers of the panicked batch are answered: by then readiness is already true to
    /// the threads that run.
    fn retire(&self) {
        self.retired.set(true);
        self.crew.live.fetch_sub(1, Ordering::SeqCst);
        self.crew.fill();
    }

    /// Waits for a request, then for more until `max_batch` texts or `max_wait`. `None`
    /// once the queue is closed and drained.
    fn gather(&self) -> Option<Vec<Job>> {
        // A panic elsewhere cannot leave the receiver inconsistent; keep serving.
        let receiver = self
            .crew
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = receiver.recv().ok()?;
        let deadline = Instant::now()
            .checked_add(self.crew.max_wait)
            .expect("max_wait is validated to at most MAX_WAIT (a bug otherwise)");
        let mut texts = first.texts.len();
        let mut jobs = vec![first];
        while texts < self.crew.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(job) => {
                    texts += job.texts.len();
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(jobs)
    }

    /// Runs the gathered requests in forward passes of at most `max_batch` texts and
    /// answers each caller. A failed pass fails every request with a text in it; `Err` if
    /// one panicked.
    fn serve(&self, jobs: Vec<Job>) -> Result<(), ()> {
        let crew = &*self.crew;
        // Callers that gave up are not worth a forward pass.
        let jobs: Vec<Job> = jobs
            .into_iter()
            .filter(|job| !job.reply.is_closed())
            .collect();
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|job| job.texts.iter().map(String::as_str))
            .collect();
        let mut vectors = Vec::with_capacity(texts.len());
        let mut failure = None;
        let mut panicked = false;
        for chunk in texts.chunks(crew.max_batch) {
            Counters::add(&crew.counters.invocations, 1);
            match crew.embed(chunk) {
                Ok(batch) => vectors.extend(batch),
                Err(fault) => {
                    Counters::add(&crew.counters.failed_invocations, 1);
                    let error = match fault {
                        Fault::Error(error) => error,
                        Fault::Panic(message) => {
                            Counters::add(&crew.counters.panics, 1);
                            panicked = true;
                            ModelError::Panicked(message)
                        }
                    };
                    tracing::error!(%error, texts = chunk.len(), "embedding batch failed");
                    failure = Some(error);
                    break;
                }
            }
        }
        if panicked {
            self.retire();
        }
        // Hand each caller its share; callers entirely before a failed pass still succeed.
        let mut vectors = vectors.into_iter();
        for job in jobs {
            let n = job.texts.len();
            let mine: Vec<Vec<f32>> = vectors.by_ref().take(n).collect();
            let reply = if mine.len() == n {
                Counters::add(&crew.counters.texts, n);
                Ok(mine)
            } else {
                Err(failure.clone().unwrap_or_else(|| {
                    panic!("bug: the embedder returned fewer vectors than it was given texts")
                }))
            };
            // The caller may have gone in the meantime; nothing to do then.
            let _ = job.reply.send(reply);
        }
        if panicked { Err(()) } else { Ok(()) }
    }
}
